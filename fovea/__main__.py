from fovea.cli import main

raise SystemExit(main())
