"""`python -m spark_infer.bench`: the same as `spark-infer bench`."""

import sys

from spark_infer.bench.cli import main

sys.exit(main())
