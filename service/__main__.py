"""python -m service: one API process (see service.cli for options)."""

from service.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve"]))
