"""The app's static files (CSS, scripts, icons), shipped inside the distribution as the data package `app.static`."""
