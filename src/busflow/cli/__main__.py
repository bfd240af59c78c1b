from busflow.cli import main

raise SystemExit(main())
