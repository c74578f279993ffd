"""The `lmlang` command (also `python -m lmlang`): run a program, serve a model, trace a function.

    lmlang run prog.py [--model PATH | --endpoint URL | --openai MODEL] [-- program args]
    lmlang serve [--model PATH] [--host H] [--port P] [--api-key KEY] [engine options]
    lmlang trace prog.py:func [--json]

Only the chosen subcommand's dependencies are imported (torch only when a model is loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from typing import Any, Callable, Optional, Sequence

from lmlang.cli_options import add_engine_options, engine_kwargs, load_engine, loading, with_progress

_DESCRIPTION = """\
lmlang: a structured-generation language for LLMs, embedded in Python, with its own runtime.

commands:
  run     run a Python program that uses lmlang, with the model you choose
  serve   serve a model over HTTP (OpenAI-compatible API, SGLang-style /generate, /program)
  trace   print the program DAG that a decorated function traces to

examples:
  lmlang run examples/quickstart.py                       # built-in tiny model, no flags needed
  lmlang run my_prog.py --model ~/models/Qwen3-0.6B       # a local Hugging Face checkpoint
  lmlang run my_prog.py --endpoint http://127.0.0.1:30000 # a running `lmlang serve`
  lmlang run my_prog.py --openai gpt-4o-mini              # any OpenAI-compatible API
  lmlang serve --model ~/models/Qwen3-0.6B --port 30000
  lmlang trace examples/quickstart.py:qa

Run `lmlang <command> --help` for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlang", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lmlang {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run a program file with a chosen backend",
        description="Runs a Python file as __main__ after setting lmlang's default backend. With no backend "
                    "option, programs use the embedded default model (tiny, random weights: it shows that a "
                    "program runs, not what a real model says). Arguments after `--` go to the program "
                    "(sys.argv[1:]).",
        epilog="example: lmlang run examples/batch.py --model ~/models/Qwen3-0.6B -- --limit 10")
    run.add_argument("program", help="path of the Python file to run")
    backend = run.add_mutually_exclusive_group()
    backend.add_argument("--model", metavar="PATH", help="run an in-process engine on this Hugging Face checkpoint "
                         "directory (safetensors + tokenizer)")
    backend.add_argument("--endpoint", metavar="URL", help="use a running `lmlang serve` at this URL")
    backend.add_argument("--openai", metavar="MODEL", help="use this model of an OpenAI-compatible API "
                         "(OPENAI_API_KEY / OPENAI_BASE_URL, or --api-key / --base-url)")
    run.add_argument("--api-key", help="API key for --endpoint or --openai")
    run.add_argument("--base-url", help="base URL for --openai (default: OpenAI's)")
    add_engine_options(run, "in-process engine options (with --model)")

    serve = sub.add_parser(
        "serve", help="serve a model over HTTP",
        description="Serves a model over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions, "
                    "SGLang-style /generate, /program for compiled lmlang programs, /metrics (Prometheus), "
                    "/health. Binds 127.0.0.1 unless --host says otherwise. Stops cleanly on Ctrl-C or SIGTERM "
                    "(in-flight requests finish first).",
        epilog="example: lmlang serve --model ~/models/Qwen3-0.6B --port 30000 --api-key secret\n"
               "then:    OpenAI(base_url='http://127.0.0.1:30000/v1', api_key='secret')",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--model", metavar="PATH", help="Hugging Face checkpoint directory "
                       "(default: the embedded tiny model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; "
                       "use 0.0.0.0 to accept other machines, ideally with --api-key)")
    serve.add_argument("--port", type=int, default=30000, help="port (default: %(default)s)")
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every request but /health")
    serve.add_argument("--served-model-name", metavar="NAME", help="model name for the OpenAI API "
                       "(default: the model path)")
    serve.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024,
                       help="largest accepted request body (default: %(default)s)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="server log level (default: %(default)s)")
    add_engine_options(serve, "engine options")

    trace = sub.add_parser(
        "trace", help="print the DAG a function traces to",
        description="Imports a program file (without running its `if __name__ == '__main__'` block), traces "
                    "the named @lmlang.function and prints its program DAG.",
        epilog="examples: lmlang trace examples/tree_of_thought.py:tree_of_thought --json\n"
               "          lmlang trace examples/chat.py:conversation --arg 'questions=[\"Hi\", \"Bye\"]'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    trace.add_argument("target", metavar="FILE:FUNCTION", help="program file and function name")
    trace.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                       help="bake an argument into the trace (VALUE is read as JSON if it parses, else as a "
                            "string); needed when the program's shape depends on it, e.g. a loop over a list")
    trace.add_argument("--json", action="store_true", help="print the DAG as JSON (Program.to_json())")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    program_args: list = []
    if "--" in argv:
        cut = argv.index("--")
        argv, program_args = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if program_args and args.command != "run":
        parser.error("arguments after `--` are for `lmlang run` only")
    try:
        if args.command == "run":
            return _run(args, program_args)
        if args.command == "serve":
            return _serve(args)
        return _trace(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        # a user mistake (bad path, bad option value): say it without a traceback
        print(f"lmlang {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, program_args: list) -> int:
    program = _existing_file(args.program)
    import lmlang as ll

    backend = _backend(args, ll)
    previous = ll.get_default_backend()
    if backend is not None:
        ll.set_default_backend(backend)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [program, *program_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(program)))
    try:
        runpy.run_path(program, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        if backend is not None:  # leave an in-process caller's default as it was
            ll.set_default_backend(previous)
            shutdown = getattr(backend, "shutdown", None)
            if shutdown is not None:
                shutdown()
    return 0


def _backend(args: argparse.Namespace, ll: Any) -> Any:
    if args.model:
        with loading(args.model):
            return ll.Engine(args.model, **with_progress(engine_kwargs(args)))
    if args.endpoint:
        return ll.RuntimeEndpoint(args.endpoint, api_key=args.api_key)
    if args.openai:
        return ll.OpenAI(args.openai, base_url=args.base_url, api_key=args.api_key)
    return None


def _serve(args: argparse.Namespace) -> int:
    from lmlang.runtime.server.launch import serve

    model = args.model
    if model is None:
        from lmlang.default_backend import announce, embedded_default_model_path

        model = embedded_default_model_path()
        announce(model)
    engine = load_engine(model, engine_kwargs(args))
    serve(engine, host=args.host, port=args.port, api_key=args.api_key, served_model_name=args.served_model_name,
          max_body_bytes=args.max_body_bytes, log_level=args.log_level,
          configure_app=program_route_mounter(engine))
    return 0


def program_route_mounter(engine: Any) -> Optional[Callable[[Any], None]]:
    """A `configure_app` hook mounting `POST /program` for `engine`, from the language package
    (the runtime never imports the language); None if the language does not provide it."""
    try:
        from lmlang.program_route import mount_program_route
    except ImportError:
        return None
    return lambda app: mount_program_route(app, engine)


def _trace(args: argparse.Namespace) -> int:
    path, sep, name = args.target.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"expected FILE:FUNCTION, e.g. examples/quickstart.py:qa, got {args.target!r}")
    path = _existing_file(path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    namespace = runpy.run_path(path, run_name="__lmlang_trace__")
    if name not in namespace:
        functions = sorted(k for k, v in namespace.items() if hasattr(v, "trace"))
        raise ValueError(f"{path} has no {name!r}; lmlang functions there: {', '.join(functions) or 'none'}")
    func = namespace[name]
    if not hasattr(func, "trace"):
        raise ValueError(f"{name!r} in {path} is not an @lmlang.function")
    from lmlang.errors import ArgumentUsedError, TraceError

    try:
        program = func.trace(**_trace_arguments(args.arg))
    except TraceError as exc:
        hint = " (give that argument's value with --arg NAME=VALUE)" if isinstance(exc, ArgumentUsedError) else ""
        raise ValueError(f"cannot trace {name}: {exc}{hint}") from None
    if args.json:
        dumped = program.to_json()
        print(dumped if isinstance(dumped, str) else json.dumps(dumped, indent=2))
    else:
        print(program)
    return 0


def _trace_arguments(pairs: list) -> dict:
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--arg takes NAME=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such program file: {path}")
    return path


def _version() -> str:
    from lmlang import __version__

    return __version__
