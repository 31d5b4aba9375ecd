"""The networks: classifier F, generator pair (E, G), patch critic, rejection head B, and F's representations."""
