"""The application: the `ursa` command, the local stack (`ursa up`) and the demo. It may
import every layer; no layer imports it."""
