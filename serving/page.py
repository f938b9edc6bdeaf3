"""``GET /``: the upload page, the lesson's bear classifier app done properly.

Pick or drop an image, see its preview, the top classes with their probabilities and the
model version that answered. The markup is ``templates/upload.html``, its script and style
``static/upload.js`` and ``static/upload.css``: nothing external, so it works offline, and
nothing inline, so the policy allows scripts from this server only.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse

from serving.responses import html_page


async def upload_page(request: Request) -> HTMLResponse:
    # img-src blob: the preview is the picked file, shown without sending it anywhere.
    return html_page(request, "upload.html", img_src="blob:")
