// The toolkit styles some components differently when JavaScript runs; kept in a file so the
// content security policy needs no inline script.
document.body.className += ' js-enabled' + ('noModule' in HTMLScriptElement.prototype ? ' nhsuk-frontend-supported' : '');
