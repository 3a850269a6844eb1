"""Where data lives and who owns it: the site config, its locations and its stations."""
