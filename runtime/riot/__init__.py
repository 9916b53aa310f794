"""RIoTBench's tasks as migratable building blocks (standard library only: runs on a board)."""
