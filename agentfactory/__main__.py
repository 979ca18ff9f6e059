from agentfactory.cli import main

main()
