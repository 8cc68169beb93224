"""What a sweep compares and what it writes: the baseline and pairing declaration, paired statistics, and the sweep record."""
