from catalogtune.cli import main

raise SystemExit(main())
