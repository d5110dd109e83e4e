import sys

from ratelimit_ext.cli import main

sys.exit(main())
