import sys

from plotarmour.modelserver.server import main

from . import Settings

if __name__ == "__main__":
    sys.exit(main(Settings, prog="python -m services.bdh"))
