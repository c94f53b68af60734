"""A module's call through the hub with Python `requests`, as the client tests run it.

usage: hub_client.py PROXY CA_FILE URL BODY_FILE MODE
MODE: plain (bytes body), expect (Expect: 100-continue forced), chunked (a generator body,
sent chunked), refused (a GET the hub refuses: prints the status and the problem's code).
Prints one JSON line: {"status": ..., "body": ...}.
"""
import json
import sys

import requests

proxy, ca, url, body_file, mode = sys.argv[1:6]
proxies = {"http": proxy, "https": proxy}
with open(body_file, "rb") as f:
    data = f.read()

if mode == "plain":
    r = requests.post(url, data=data, proxies=proxies, verify=ca, timeout=60)
elif mode == "expect":
    r = requests.post(url, data=data, headers={"Expect": "100-continue"}, proxies=proxies,
                      verify=ca, timeout=60)
elif mode == "chunked":
    pieces = (data[i:i + 65536] for i in range(0, len(data), 65536))
    r = requests.post(url, data=pieces, proxies=proxies, verify=ca, timeout=60)
elif mode == "refused":
    r = requests.get(url, proxies=proxies, verify=ca, timeout=60)
    try:
        r.raise_for_status()
    except requests.HTTPError as e:
        # What a module sees: the status and the problem's code, from the exception.
        print(json.dumps({"status": e.response.status_code, "body": e.response.json()}))
        sys.exit(0)
else:
    sys.exit(f"unknown mode {mode}")
print(json.dumps({"status": r.status_code, "body": r.json()}))
