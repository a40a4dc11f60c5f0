"""The app's Jinja templates, shipped inside the distribution as the data package `app.templates`."""
