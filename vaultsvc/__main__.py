from vaultsvc.cli import main

raise SystemExit(main())
