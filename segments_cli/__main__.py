import sys

from segments_cli.main import main

sys.exit(main())
