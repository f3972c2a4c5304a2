from largebatch.cli import main

raise SystemExit(main())
