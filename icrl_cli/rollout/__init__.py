"""Sessions of solve, critique and revise, and the Sample records they produce."""
