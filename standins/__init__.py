"""Local stand-ins for what this machine cannot reach: an image host (with the junk real URL
lists hold), a search engine speaking DuckDuckGo's protocol, a weights host, and generated
photos. Ordinary modules: the demo, the benchmarks and the tests all run them."""
