"""The bootstrap reward ensemble of SEIKO and the ways to aggregate its heads."""
