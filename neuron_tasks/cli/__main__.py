from neuron_tasks.cli.app import main

main()
