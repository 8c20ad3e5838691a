"""synthfed on Flower: the same strategies, client code and ledgers across machines.

Install with ``pip install "synthfed[flower]"``. ``client_app:app`` and
``server_app:app`` are the Flower app's components; ``deploy`` starts and stops
a local SuperLink and SuperNodes (``synthfed flower serve|node|run``).
Nothing in ``synthfed``'s core imports this package: the in-process engine
runs without Flower installed."""
