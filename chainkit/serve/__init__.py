"""chainkit as an HTTP service: a pipeline behind an ASGI app (``pip install 'chainkit[serve]'``).

>>> import asyncio, httpx
>>> from chainkit import Canned, Generate, IntentScan, KeywordClassifier, Ledger, OfflineModel
>>> from chainkit import Pipeline
>>> bot = Pipeline([
...     IntentScan(classifier=KeywordClassifier({"greeting": ["hi"]})),
...     Canned(replies={"greeting": "Hello!"}),
...     Generate(model=OfflineModel(model_id="amazon.nova-micro-v1:0")),
... ])
>>> app = create_app(bot, Ledger())
>>> async def ask() -> dict:
...     transport = httpx.ASGITransport(app=app)
...     async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
...         r = await client.post("/v1/chat", json={"message": "hi"}, headers={"X-Tenant": "acme"})
...         return r.json()
>>> answer = asyncio.run(ask())
>>> answer["reply"], answer["stage"], [e["stage"] for e in answer["entries"]]
('Hello!', 'canned', ['intent_scan', 'canned'])
"""

from chainkit.serve.app import Service, create_app

__all__ = ["Service", "create_app"]
