// Reset links carry their token after '#', which never reaches the server or its logs.
(function () {
  var match = /token=([A-Za-z0-9_\-]+)/.exec(window.location.hash);
  if (match) {
    document.getElementById('token').value = match[1];
    history.replaceState(null, '', window.location.pathname);
  }
})();
