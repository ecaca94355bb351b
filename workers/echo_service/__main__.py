"""python -m workers.echo_service --port 8201 [--name NAME] [--max-concurrency N] [--fail]"""

from __future__ import annotations

from workers.echo_service.app import create_app
from workers.serving import arguments, serve


def main() -> None:
    parser = arguments("echo_service: answers {value, instance} after `delay` seconds", 8201)
    parser.add_argument("--name", default="echo_service", help="service name announced in /me")
    parser.add_argument("--label", default=None, help="this instance's label in answers (default host:port)")
    parser.add_argument("--max-concurrency", type=int, default=None, help="tasks at once (told to the proxy in /me)")
    parser.add_argument("--fail", action="store_true", help="answer every task with 500 (retry tests)")
    args = parser.parse_args()
    label = args.label or f"{args.host}:{args.port}"
    serve(create_app(args.name, label, args.max_concurrency, args.fail), args.host, args.port)


if __name__ == "__main__":
    main()
