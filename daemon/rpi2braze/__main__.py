from rpi2braze.cli import main

raise SystemExit(main())
