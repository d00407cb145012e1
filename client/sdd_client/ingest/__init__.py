"""`sdd-ingest`: detections from other producers (Falco, Wazuh active response, YARA, JSON lines) into the spool.

`main.py` is the console script; `lines.py` reads a stream line by line; one module per format maps its
events to the detection model (`falco.py`, `wazuh.py`, `yara.py`, `jsonl.py`); `outcome.py` holds what an
adapter says about its input. Kept lean (no asyncio, no client library): see main.py.
"""
