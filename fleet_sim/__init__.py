"""Fleet simulator and hardware-in-the-loop harness: brokers, fleets, scenarios, reports."""
