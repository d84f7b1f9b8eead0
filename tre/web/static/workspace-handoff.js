// Submit the single-use login token to JupyterHub at once; the button remains for people without JavaScript.
document.getElementById('workspace-handoff').submit();
