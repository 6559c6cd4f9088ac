import sys

from serve.runtime.cli import main

sys.exit(main())
