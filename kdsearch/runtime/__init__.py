"""The process and its folder: output.dir locks, Ctrl-C and SIGTERM, the libraries' quiet switches, where a search
lives on disk."""
