"""python -m app [--checkpoint NAME_OR_DIR] [--host 127.0.0.1] [--port 7860]"""

import argparse

from app import launch


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description="Serve the wavegen web demo.")
    parser.add_argument("--checkpoint", default="default",
                        help="a folder under checkpoints/ or a path (default: %(default)s; Griffin-Lim "
                             "only if it is missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    args = parser.parse_args()
    launch(args.checkpoint, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
