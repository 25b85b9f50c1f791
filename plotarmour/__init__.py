"""PlotArmour."""
