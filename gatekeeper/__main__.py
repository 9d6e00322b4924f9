from gatekeeper.agent import main

main()
