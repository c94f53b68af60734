// A module's call through the hub with Java 17's java.net.http.HttpClient (defaults: HTTP/2
// offered, falls back to HTTP/1.1), as the client tests run it with `java HubClient.java ...`.
//
// usage: HubClient PROXY_HOST PROXY_PORT CA_FILE URL BODY_FILE MODE
// MODE: plain (a file body), expect (expectContinue(true)), chunked (a body of unknown length),
// refused (a GET the hub refuses). Prints "STATUS BODY".
// With HUB_CALLER and HUB_CALLER_TOKEN set, it sends the caller credential the way a Java module
// must: an Authenticator for the proxy, and Basic allowed for tunnels (run with
// -Djdk.http.auth.tunneling.disabledSchemes= ; the JDK disables Basic for CONNECT by default).

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.Authenticator;
import java.net.InetSocketAddress;
import java.net.PasswordAuthentication;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class HubClient {
    public static void main(String[] a) throws Exception {
        String proxyHost = a[0];
        int proxyPort = Integer.parseInt(a[1]);
        Path ca = Path.of(a[2]);
        URI url = URI.create(a[3]);
        Path body = Path.of(a[4]);
        String mode = a[5];

        KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
        trust.load(null, null);
        try (var in = Files.newInputStream(ca)) {
            trust.setCertificateEntry("hub", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(null, tmf.getTrustManagers(), null);

        HttpClient.Builder builder = HttpClient.newBuilder()
                .proxy(ProxySelector.of(new InetSocketAddress(proxyHost, proxyPort)))
                .sslContext(tls)
                .connectTimeout(Duration.ofSeconds(10));
        String caller = System.getenv("HUB_CALLER");
        String token = System.getenv("HUB_CALLER_TOKEN");
        if (caller != null && token != null) {
            builder.authenticator(new Authenticator() {
                @Override
                protected PasswordAuthentication getPasswordAuthentication() {
                    if (getRequestorType() != RequestorType.PROXY) {
                        return null;
                    }
                    return new PasswordAuthentication(caller, token.toCharArray());
                }
            });
        }
        HttpClient client = builder.build();
        HttpRequest.Builder req = HttpRequest.newBuilder(url).timeout(Duration.ofSeconds(60));
        switch (mode) {
            case "plain" -> req.POST(HttpRequest.BodyPublishers.ofFile(body));
            case "expect" -> req.expectContinue(true).POST(HttpRequest.BodyPublishers.ofFile(body));
            case "chunked" -> req.POST(HttpRequest.BodyPublishers.ofInputStream(() -> {
                try {
                    return Files.newInputStream(body);
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            }));
            case "refused" -> req.GET();
            default -> throw new IllegalArgumentException(mode);
        }
        HttpResponse<String> resp = client.send(req.build(), HttpResponse.BodyHandlers.ofString());
        System.out.println(resp.statusCode() + " " + resp.body());
    }
}
