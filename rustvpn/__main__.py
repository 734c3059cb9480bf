import sys

from rustvpn.cli import main

sys.exit(main())
