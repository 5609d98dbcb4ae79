"""Entry point of the `feishu-desktop` executable: the Bitable plugin's download service in a window."""
import sys

from bridge.desktop import main

sys.exit(main())
