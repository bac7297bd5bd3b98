from vpd_bench.cli import main

raise SystemExit(main())
