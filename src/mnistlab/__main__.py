from mnistlab.cli import main

raise SystemExit(main())
