import sys

from defectray.cli import main

sys.exit(main())
