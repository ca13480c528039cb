"""`python -m churnwatch <command> ...`, the same as the `churnwatch` command."""

from churnwatch.cli import main

if __name__ == "__main__":
    # Lightning's DDP launcher restarts workers as `python -m <__main__.__spec__.name> <sys.argv[1:]>`, which
    # would drop the subcommand; without a spec it runs sys.argv[0], the subcommand's file, as it does for
    # the console script
    __spec__ = None
    main()
