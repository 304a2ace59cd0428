"""The pure core: rules and arithmetic over plain data. No I/O, no clock, no await."""
