import sys

from bridge.desktop.window import main

sys.exit(main())
