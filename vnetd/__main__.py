from vnetd.daemon import main

main()
