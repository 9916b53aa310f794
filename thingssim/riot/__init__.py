"""RIoTBench on thingssim: its datasets, dataflows and measurements."""
