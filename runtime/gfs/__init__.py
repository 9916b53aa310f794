"""The global file system: files that follow a program from board to board."""
