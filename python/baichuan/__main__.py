from baichuan.cli import main

raise SystemExit(main())
