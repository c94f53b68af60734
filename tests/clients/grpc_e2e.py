"""gRPC through the hub with grpcio, as a module team runs it (no generated code: raw bytes).

server --cert C --key K   a TLS gRPC provider on 127.0.0.1; prints its port, serves until stdin
                          closes. Every answer starts with the `authorization` it received.
client --target H:P --ca CA [--unknown H:P]
                          calls Unary, List (server streaming) and Chat (bidi) through the
                          proxy named by grpc_proxy/https_proxy; prints one JSON object.
"""

import argparse
import json
import sys
import threading

import grpc


def auth_of(context):
    for key, value in context.invocation_metadata():
        if key == "authorization":
            return value
    return "-"


def unary(request, context):
    return f"{auth_of(context)}|{request.decode()}".encode()


def listing(request, context):
    for i in range(3):
        yield f"{auth_of(context)}|{request.decode()}|{i}".encode()


def chat(requests, context):
    for r in requests:
        yield f"{auth_of(context)}|{r.decode()}".encode()


def server(args):
    from concurrent import futures

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "List": grpc.unary_stream_rpc_method_handler(listing),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hub.Echo", handlers),))
    with open(args.cert, "rb") as c, open(args.key, "rb") as k:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    port = srv.add_secure_port("127.0.0.1:0", creds)
    srv.start()
    print(port, flush=True)
    sys.stdin.read()
    srv.stop(0)


def client(args):
    with open(args.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    out = {}
    with grpc.secure_channel(args.target, creds) as ch:
        call = ch.unary_unary("/hub.Echo/Unary")
        out["unary"] = call(b"hello", timeout=20).decode()
        stream = ch.unary_stream("/hub.Echo/List")
        out["list"] = [m.decode() for m in stream(b"q", timeout=20)]
        bidi = ch.stream_stream("/hub.Echo/Chat")
        # Bidi, lock-step: the next message goes only once the previous answer is back.
        answers = []
        got = threading.Event()
        def messages():
            for m in ["one", "two", "three"]:
                got.clear()
                yield m.encode()
                if not got.wait(20):
                    return
        for a in bidi(messages(), timeout=30):
            answers.append(a.decode())
            got.set()
        out["chat"] = answers
    if args.unknown:
        with grpc.secure_channel(args.unknown, creds) as ch:
            try:
                ch.unary_unary("/hub.Echo/Unary")(b"x", timeout=20)
                out["unknown"] = "answered"
            except grpc.RpcError as e:
                out["unknown"] = e.code().name
                out["unknown_details"] = e.details()
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--target")
    p.add_argument("--ca")
    p.add_argument("--unknown")
    args = p.parse_args()
    server(args) if args.mode == "server" else client(args)


if __name__ == "__main__":
    main()
