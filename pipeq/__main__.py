import sys

from pipeq.cli import main

sys.exit(main())
