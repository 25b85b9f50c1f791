"""`plotarmour generate "Once upon a time" --logic-weight 0.7`: stream a story from the gateway.
`plotarmour up`: run the whole system on this machine (plotarmour.stack).

Consumes the gateway's Server-Sent Events (`POST /generate_stream`) and prints the text
as it arrives. Needs only httpx: no torch, no model files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator

import httpx

from plotarmour import stack
from plotarmour.sampling import BLENDS

DEFAULT_URL = "http://127.0.0.1:8000"


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from the lines of an event stream (the SSE wire format).

    An event ends at a blank line; `data:` lines join with newlines; comments (":") and
    unknown fields are skipped; an event with no `event:` field is a "message".
    """
    event, data = None, []
    for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return body["error"]["message"]
    except Exception:
        return response.text.strip() or response.reason_phrase


def gateway_url(given: str | None) -> str:
    """--url, else $PLOTARMOUR_URL, else this user's running local stack (it may have picked
    a free port), else the default."""
    return given or os.environ.get("PLOTARMOUR_URL") or stack.running_stack_url() or DEFAULT_URL


def generate(args: argparse.Namespace, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    body = {"prompt": args.prompt, "blend": args.blend, "stop": args.stop or []}
    # Unset: the gateway's defaults (its page's default preset), not a second copy of them here.
    for key in ("logic_weight", "temperature", "top_k", "top_p"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.max_new_tokens is not None:
        body["max_new_tokens"] = args.max_new_tokens
    if args.seed is not None:
        body["seed"] = args.seed
    base = gateway_url(args.url)
    url = base.rstrip("/") + "/generate_stream"
    # No read timeout by default: a long story may pause between tokens under load; the
    # gateway itself bounds how long it waits for the model servers.
    timeout = httpx.Timeout(10.0, read=args.timeout)
    try:
        with httpx.stream("POST", url, json=body, timeout=timeout) as r:
            if r.status_code != 200:
                r.read()
                print(f"error {r.status_code}: {_error_message(r)}", file=err)
                return 1
            if args.echo:
                out.write(args.prompt)
            for event, data in parse_sse(r.iter_lines()):
                ev = json.loads(data)
                if event == "token":
                    out.write(ev["text"])
                    out.flush()
                elif event == "end":
                    out.write("\n")
                    if args.verbose:
                        print(f"[{ev['finish_reason']}; {ev['usage']['completion_tokens']} tokens; "
                              f"{ev['timings']['tokens_per_s']} tokens/s]", file=err)
                    return 0
                elif event == "error":
                    out.write("\n")
                    print(f"error: {ev['error']['message']}", file=err)
                    return 1
            print("error: the stream ended without a final event", file=err)
            return 1
    except httpx.HTTPError as e:
        print(f"error: cannot reach the gateway at {base} ({e}). Start one with `python -m plotarmour.stack`, "
              "or say where it is with --url or PLOTARMOUR_URL", file=err)
        return 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="plotarmour", description="PlotArmour command-line client.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="stream a story from the gateway")
    g.add_argument("prompt", help="the start of the story")
    g.add_argument("--logic-weight", type=float, help="0 = pure GPT-2 (creative), 1 = pure BDH (logic); "
                                                       "default: the gateway's")
    g.add_argument("--blend", choices=list(BLENDS), default="linear")
    g.add_argument("--max-new-tokens", type=int, help="default: the gateway's")
    g.add_argument("--temperature", type=float, help="0 = greedy; default: the gateway's")
    g.add_argument("--top-k", type=int, help="0 = no cut; default: the gateway's")
    g.add_argument("--top-p", type=float, help="1 = no cut; default: the gateway's")
    g.add_argument("--seed", type=int, help="same seed, same story")
    g.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    g.add_argument("--url", help="gateway URL (default: env PLOTARMOUR_URL, else the local stack "
                                 f"`plotarmour up` is running, else {DEFAULT_URL})")
    g.add_argument("--timeout", type=float, default=None, help="seconds to wait between events (default: no limit)")
    g.add_argument("--echo", action="store_true", help="print the prompt before the story")
    g.add_argument("-v", "--verbose", action="store_true", help="print finish reason and speed to stderr")
    g.set_defaults(func=generate)
    # `plotarmour up ...` is the local stack's own command line, passed through whole.
    up = sub.add_parser("up", add_help=False, help="run both model servers and the gateway here "
                                                  "(plotarmour up --help)")
    up.add_argument("args", nargs=argparse.REMAINDER)
    up.set_defaults(func=lambda a: stack.main(a.args))
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["up"]:  # argparse would eat the stack's own flags (--help, --port...)
        return stack.main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
