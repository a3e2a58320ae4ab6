import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

/** `--bootstrap-server HOST:PORT --list`: prints the topics, exits non-zero when the broker does not answer. */
public final class ListTopics {
    public static void main(String[] args) throws Exception {
        String bootstrap = null;
        for (int i = 0; i < args.length - 1; i++) {
            if (args[i].equals("--bootstrap-server")) {
                bootstrap = args[i + 1];
            }
        }
        if (bootstrap == null || !java.util.Arrays.asList(args).contains("--list")) {
            System.err.println("usage: kafka-topics.sh --bootstrap-server HOST:PORT --list");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "15000");
        try (Admin admin = Admin.create(props)) {
            for (String topic : admin.listTopics().names().get(15, TimeUnit.SECONDS)) {
                System.out.println(topic);
            }
        }
    }
}
